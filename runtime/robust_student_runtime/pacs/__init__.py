"""The PACS node: DICOMweb (``pacs run``) and DIMSE (``pacs listen``) in, a TID 1500 DICOM SR out."""
