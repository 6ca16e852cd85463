"""The result as a DICOM Structured Report, the way clinical AI results are exchanged (IHE AI Results).

A TID 1500 Imaging Measurement Report in a Comprehensive SR, built with highdicom's ``MeasurementReport``:

* one TID 1501 measurement group per reported class (the top ``k``): the class as the group's Finding
  (121071, coded in the private scheme ``99RSTUDENT``, value = class index, meaning = label) and its probability
  as a NUM (122157, DCM, "Probability", unit "1"), with the algorithm (TID 4019) and the source image;
* the algorithm identified (``AlgorithmIdentification``: model name, version, and as parameters the ONNX weights'
  sha256, the artifact's validation status and its robust accuracy under its threat, from the ONNX metadata),
  with a device observer (TID 1004) whose UID is derived from the weights digest;
* the source instance as evidence (CurrentRequestedProcedureEvidenceSequence); patient and study attributes
  copied unchanged by highdicom from the source; VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY,
  CompletionFlag COMPLETE; ContributingEquipment: the model as processing equipment.

The SR's Series and SOP Instance UIDs are derived from (source SOP Instance UID, model weights digest), so a
rerun writes the same object (an archive keeps one copy): see :func:`result_uids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..student import OnnxStudent, Prediction

MANUFACTURER = "robust_student"
CLASS_SCHEME = "99RSTUDENT"  # private coding scheme of the model's classes (value: class index)
SERIES_NUMBER = 9001
SERIES_DESCRIPTION = "AI classification (robust_student; not verified by a physician)"


@dataclass(frozen=True)
class ResultUIDs:
    series: str
    sop: str
    device: str


def result_uids(source_sop_uid: str, weights_sha256: str) -> ResultUIDs:
    """Deterministic UIDs for the SR of ``source_sop_uid`` by the model with ``weights_sha256`` (pydicom's
    ``generate_uid`` hashes its entropy sources; separators keep the fields apart)."""
    from pydicom.uid import generate_uid

    key = f"robust_student|{source_sop_uid}|{weights_sha256}"
    return ResultUIDs(series=generate_uid(entropy_srcs=[key, "|series"]),
                      sop=generate_uid(entropy_srcs=[key, "|sop"]),
                      device=generate_uid(entropy_srcs=[f"robust_student|device|{weights_sha256}"]))


def model_identity(model: OnnxStudent) -> dict[str, str]:
    """Name, version, digest, validation status and robust accuracy of the model, from its ONNX metadata."""
    meta = model.metadata
    architecture = meta.get("architecture") if isinstance(meta.get("architecture"), dict) else {}
    name = " ".join(str(p) for p in ("robust_student", meta.get("method") or "", architecture.get("name") or "")
                    if p).strip()
    validation = model.validation or {}
    threat = model.threat or {}
    robust = validation.get("robust_accuracy")
    threat_text = f"{threat.get('norm', '?')} eps {threat.get('eps_text') or threat.get('eps', '?')}" if threat \
        else "unknown threat"
    return {
        "name": name[:64] or model.path.stem,
        "version": str(meta.get("robust_student_version") or "unknown"),
        "weights_sha256": str(meta.get("weights_sha256") or ""),
        "validation_status": str(meta.get("validation_status") or "not validated"),
        "robust_accuracy": f"{float(robust):.4f}" if isinstance(robust, (int, float)) else "not measured",
        "threat": threat_text,
        "precision": model.precision,
    }


def _procedure(modality: str):
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    by_modality = {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion,
                   "NM": codes.LN.NMUnspecifiedBodyRegion, "PT": codes.LN.PETUnspecifiedBodyRegion}
    if modality in by_modality:
        return by_modality[modality]
    if modality == "US":
        return CodedConcept("25061-3", "LN", "US unspecified body region")
    return codes.LN.XRUnspecifiedBodyRegion  # CR, DX, MG, IO, XA, RF and anything else projected


def build_sr(source: Any, prediction: Prediction, model: OnnxStudent, *, top_k: int = 3) -> Any:
    """The Comprehensive SR (a pydicom Dataset) reporting ``prediction`` of ``source`` (the dataset it was made
    from) by ``model``."""
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    if not prediction.ok or prediction.probabilities is None:
        raise ValueError("only a prediction becomes a report; a refusal is logged, not stored")
    identity = model_identity(model)
    uids = result_uids(str(source.SOPInstanceUID), identity["weights_sha256"])
    algorithm = hd.sr.AlgorithmIdentification(
        name=identity["name"], version=identity["version"], manufacturer=MANUFACTURER,
        parameters=[f"weights_sha256={identity['weights_sha256']}",
                    f"validation_status={identity['validation_status']}",
                    f"robust_accuracy={identity['robust_accuracy']} under {identity['threat']}",
                    f"precision={identity['precision']}"])
    observer = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device, name=identity["name"], manufacturer_name=MANUFACTURER,
            model_name=f"{identity['name']} {identity['version']}"[:64])))
    source = _header(source)  # evidence and references need the header only, not megabytes of pixels
    probabilities = list(prediction.probabilities)
    ranked = sorted(range(len(probabilities)), key=lambda k: -probabilities[k])[:max(1, top_k)]
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    groups = []
    for rank, k in enumerate(ranked, start=1):
        label = model.labels[k] if k < len(model.labels) else str(k)
        finding = CodedConcept(value=str(k), scheme_designator=CLASS_SCHEME, meaning=label[:64])
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                identifier=f"rank {rank}: {label}"[:64],
                uid=_derived(uids.sop, f"group{rank}")),
            finding_type=finding,
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(probabilities[k]), 6),
                                            unit=codes.UCUM.NoUnits)],  # the group's algorithm applies
            source_images=[source_image]))
    modality = str(getattr(source, "Modality", "") or "").upper()
    report = hd.sr.MeasurementReport(observation_context=observer, procedure_reported=_procedure(modality),
                                     imaging_measurements=groups)
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=identity["name"], software_versions=identity["version"],
        contribution_description=f"classification by ONNX weights sha256 {identity['weights_sha256'][:16]}...")
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report, series_instance_uid=uids.series, series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop, instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=identity["name"], software_versions=identity["version"],
        series_description=SERIES_DESCRIPTION, is_complete=True, is_final=False, is_verified=False,
        contributing_equipment=[equipment])
    return sr


BULK = ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "OverlayData", "WaveformSequence")


def _header(ds: Any) -> Any:
    """A shallow copy of ``ds`` without its bulk data (what highdicom copies and references)."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for element in ds:
        if element.keyword not in BULK and element.tag.group != 0x7FE0:
            header.add(element)
    header.file_meta = getattr(ds, "file_meta", Dataset())
    return header


def _derived(base: str, part: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[base, "|", part])


__all__ = ["build_sr", "result_uids", "model_identity", "ResultUIDs", "CLASS_SCHEME", "SERIES_NUMBER"]
