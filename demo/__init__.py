"""The Gradio clean-vs-attacked demo (``import robust_student.demo``; needs the ``[demo]`` extra).

Arrives with the demo issue; see README.md here for its role.
"""
