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


def top_classes(probabilities: Any, labels: Any, top_k: int) -> list[tuple[int, str]]:
    """The ``top_k`` class indices by probability, highest first, each with its label (the index as text when
    the model names fewer classes)."""
    ranked = sorted(range(len(probabilities)), key=lambda k: -probabilities[k])[:top_k]
    return [(k, labels[k] if k < len(labels) else str(k)) for k in ranked]


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
    from) by ``model``, built from scratch by highdicom (the reference :class:`ReportBuilder` is checked against;
    the node uses a :class:`ReportBuilder`, which gives the same dataset about ten times faster)."""
    return ReportBuilder(model, top_k=top_k).build_full(source, prediction)


class ReportBuilder:
    """Builds the SRs of one model, fast, with highdicom as the builder of every content item.

    Profiling (cProfile, 64 SRs) showed ~80 % of highdicom's time in ``ComprehensiveSR.__init__``: it deep-copies
    the content tree and parses it back into highdicom objects (for its reader API, unused here), searches it
    three times, and builds the document attributes, which are the same for every SR of a model except the
    per-instance ones. So, per SR:

    * the content tree (TID 1500: measurement groups, findings, probabilities, source image references) is built
      by highdicom's ``MeasurementReport`` for the first SR of each modality and of each reported class, from
      items built by highdicom once per model (the ``AlgorithmIdentification``, the device observer context, the
      ``ContributingEquipment``); for the next SRs highdicom builds only the per-SR items (each group's tracking
      identifier and probability, the source image) and they take the places of those in the trees built
      before (:meth:`root`);
    * the document around it is a ``ComprehensiveSR`` built by highdicom for the first source of each *shape*
      (its SOP class, which patient/study attributes it has, its character set); the next SRs of that shape share
      its constant elements and take the per-instance ones as highdicom does: the patient and study attributes
      copied from the source (``copy_patient_and_study_information``'s list), the SR's UIDs, the creation
      date/time, the content tree's root, and the evidence from highdicom's own ``collect_evidence``.

    The datasets built are marked as needing no VR correction when written (see :func:`_mark`): encoding an SR
    then takes ~20 % less CPU, same bytes.

    The tests build SRs both ways for sources of every shape and require equal datasets (creation times aside).
    """

    def __init__(self, model: OnnxStudent, *, top_k: int = 3) -> None:
        import highdicom as hd
        from pydicom.sr.codedict import codes

        self.model, self.top_k = model, max(1, int(top_k))
        self.identity = identity = model_identity(model)
        self.digest = identity["weights_sha256"]
        self.algorithm = hd.sr.AlgorithmIdentification(
            name=identity["name"], version=identity["version"], manufacturer=MANUFACTURER,
            parameters=[f"weights_sha256={identity['weights_sha256']}",
                        f"validation_status={identity['validation_status']}",
                        f"robust_accuracy={identity['robust_accuracy']} under {identity['threat']}",
                        f"precision={identity['precision']}"])
        self.observer = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=result_uids("", self.digest).device, name=identity["name"], manufacturer_name=MANUFACTURER,
                model_name=f"{identity['name']} {identity['version']}"[:64])))
        self.equipment = hd.ContributingEquipment(
            manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=identity["name"], software_versions=identity["version"],
            contribution_description=f"classification by ONNX weights sha256 {identity['weights_sha256'][:16]}...")
        self._documents: dict[tuple, Any] = {}  # shape -> a ComprehensiveSR built by highdicom
        self._copied: dict[str, tuple[int, ...]] = {}  # source SOP class -> tags highdicom copies from it
        from pydicom.datadict import tag_for_keyword

        self._per_instance = {tag_for_keyword(k) for k in _PER_INSTANCE}
        from pydicom.dataset import Dataset

        self._no_content = Dataset()
        self._no_content.ContentSequence = []
        self._findings: dict[int, Any] = {}  # class index -> its CodedConcept (highdicom's, built once)
        self._procedures: dict[str, Any] = {}
        self._groups: dict[int, Any] = {}  # class index -> a measurement group CONTAINER highdicom built for it
        self._roots: dict[str, Any] = {}  # modality -> a report's root CONTAINER highdicom built for it

    # -- the content tree, built by highdicom for each SR -----------------------------------------------------
    def content(self, source: Any, prediction: Prediction, sop_uid: str) -> Any:
        import highdicom as hd
        from highdicom.sr import CodedConcept
        from pydicom.sr.codedict import codes

        if not prediction.ok or prediction.probabilities is None:
            raise ValueError("only a prediction becomes a report; a refusal is logged, not stored")
        probabilities = list(prediction.probabilities)
        source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
        groups = []
        for rank, (k, label) in enumerate(top_classes(probabilities, self.model.labels, self.top_k), start=1):
            finding = self._findings.get(k)
            if finding is None:
                finding = self._findings[k] = CodedConcept(value=str(k), scheme_designator=CLASS_SCHEME,
                                                           meaning=label[:64])
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    identifier=f"rank {rank}: {label}"[:64],
                    uid=_derived(sop_uid, f"group{rank}")),
                finding_type=finding,
                algorithm_id=self.algorithm,
                measurements=[hd.sr.Measurement(name=codes.DCM.Probability,
                                                value=round(float(probabilities[k]), 6),
                                                unit=codes.UCUM.NoUnits)],  # the group's algorithm applies
                source_images=[source_image]))
        modality = str(getattr(source, "Modality", "") or "").upper()
        if modality not in self._procedures:
            self._procedures[modality] = _procedure(modality)
        return hd.sr.MeasurementReport(observation_context=self.observer, procedure_reported=self._procedures[modality],
                                       imaging_measurements=groups)

    def root(self, source: Any, prediction: Prediction, sop_uid: str) -> Any:
        """The root CONTAINER of :meth:`content`'s report, reusing what highdicom built for earlier reports.

        A report's content tree differs from one SR to the next only in each measurement group's tracking
        identifier (its TEXT and UIDREF items), its probability (the NUM item) and its source image (the IMAGE
        item): the rest (the observer context, the procedure, each class's finding, the algorithm items) is the
        same for every SR of a model and modality. So highdicom builds those per-SR items
        (``TrackingIdentifier``, ``Measurement``, ``SourceImageForMeasurementGroup``) for each SR, and they take
        the places of the ones in the groups and root highdicom built in full for an earlier SR with the same
        class (group) or modality (root): new datasets along the path to each replaced item, sharing the
        unchanged items (which are never changed in place). The first report of a modality, or with a class
        not reported before, is built in full by :meth:`content`, and so is any whose items do not line up."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        if not prediction.ok or prediction.probabilities is None:
            raise ValueError("only a prediction becomes a report; a refusal is logged, not stored")
        probabilities = list(prediction.probabilities)
        ranked = top_classes(probabilities, self.model.labels, self.top_k)
        modality = str(getattr(source, "Modality", "") or "").upper()
        template = self._roots.get(modality)
        if template is not None and all(k in self._groups for k, _ in ranked):
            source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
            groups = []
            for rank, (k, label) in enumerate(ranked, start=1):
                fresh = [*hd.sr.TrackingIdentifier(identifier=f"rank {rank}: {label}"[:64],
                                                   uid=_derived(sop_uid, f"group{rank}")),
                         *hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(probabilities[k]), 6),
                                            unit=codes.UCUM.NoUnits),
                         source_image]
                group = _replaced(self._groups[k], fresh)
                if group is None:
                    break
                groups.append(group)
            else:
                measurements = _measurements(template)
                return _with_content(template, [_with_content(item, groups) if item is measurements else item
                                                for item in template.ContentSequence])
        root = self.content(source, prediction, sop_uid)[0]
        measurements = _measurements(root)
        if measurements is not None:
            self._roots.setdefault(modality, root)
            for (k, _), group in zip(ranked, measurements.ContentSequence):
                self._groups.setdefault(k, group)
        return root

    # -- the document ------------------------------------------------------------------------------------------
    def build_full(self, source: Any, prediction: Prediction) -> Any:
        """The SR as highdicom's ``ComprehensiveSR`` builds it from scratch."""
        import highdicom as hd

        uids = result_uids(str(source.SOPInstanceUID), self.digest)
        source = _header(source)  # evidence and references need the header only, not megabytes of pixels
        report = self.content(source, prediction, uids.sop)
        return _mark(hd.sr.ComprehensiveSR(
            evidence=[source], content=report, series_instance_uid=uids.series, series_number=SERIES_NUMBER,
            sop_instance_uid=uids.sop, instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=self.identity["name"], software_versions=self.identity["version"],
            series_description=SERIES_DESCRIPTION, is_complete=True, is_final=False, is_verified=False,
            contributing_equipment=[self.equipment]))

    def copied_tags(self, sop_class: str) -> tuple[int, ...]:
        """The root attributes highdicom's ``copy_patient_and_study_information`` copies from a source of this SOP
        class (its IOD's Patient and Study modules)."""
        if sop_class not in self._copied:
            from highdicom import base  # the tables _copy_root_attributes_of_module reads, by the names it uses
            from pydicom.datadict import tag_for_keyword

            modules = base.get_iod_module_map()[base.get_sop_class_iod_map()[sop_class]]
            attributes = base.get_module_attribute_map()
            tags = {tag_for_keyword(str(item["keyword"])) for module in modules if module["ie"] in ("Patient", "Study")
                    for item in attributes[module["key"]] if len(item["path"]) == 0}
            self._copied[sop_class] = tuple(sorted(t for t in tags if t is not None))
        return self._copied[sop_class]

    def build(self, source: Any, prediction: Prediction) -> Any:
        """The same SR as :meth:`build_full`, reusing the document highdicom built for a source of this shape."""
        import datetime

        from highdicom import SOPClass
        from highdicom.sr.utils import collect_evidence
        from pydicom.dataelem import DataElement
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.valuerep import DA, TM

        sop_class = str(source.SOPClassUID)
        copied = self.copied_tags(sop_class)
        present = tuple(tag for tag in copied if tag in source)
        shape = (sop_class, present, str(source.get("SpecificCharacterSet", "")),
                 "ReferringPhysicianName" in source)
        document = self._documents.get(shape)
        if document is None:
            sr = self.build_full(source, prediction)
            self._documents[shape] = sr
            return sr
        uids = result_uids(str(source.SOPInstanceUID), self.digest)
        root = self.root(source, prediction, uids.sop)  # the report's root CONTAINER, as highdicom takes it
        sr = Dataset()
        skip = set(present) | set(root.keys()) | self._per_instance
        for element in document:
            if element.tag not in skip:
                sr.add(element)  # constant for every SR of this shape (elements are never changed in place)
        # new elements for the per-instance values (never assigned into a shared element: that would change it
        # in the document and in every SR sharing it)
        now = datetime.datetime.now()
        sr.StudyInstanceUID = str(source.StudyInstanceUID)
        sr.SeriesInstanceUID, sr.SOPInstanceUID = uids.series, uids.sop
        sr.InstanceCreationDate, sr.InstanceCreationTime = DA(now.date()), TM(now.time())
        sr.ContentDate, sr.ContentTime = DA(now.date()), TM(now.time())
        for tag in present:
            sr.add(source[tag])  # as highdicom copies them, last: the source's own elements
        for tag, value in root.items():
            sr[tag] = value
        # highdicom's own steps: the equipment (the source's acquisition equipment when it names a manufacturer,
        # this model, highdicom with its time stamp), then the evidence the content references
        # (a source without a Manufacturer is one highdicom's ``for_image_acquisition`` refuses, and skips, after a
        # walk of the IOD tables that is a quarter of this build: it is not given to it)
        acquisition = source if source.get("Manufacturer") not in (None, "") else None
        SOPClass._add_contributing_equipment(sr, [self.equipment], acquisition)
        # every IMAGE item of the content is a SourceImageForMeasurementGroup made from ``source`` (see content()),
        # so highdicom's evidence is computed for a content of no items: the same references, without walking a
        # tree whose only image is the source (that walk was half the time left)
        same_study, other_study = collect_evidence([source], self._no_content, study_instance_uid=sr.StudyInstanceUID)
        if same_study:
            sr.CurrentRequestedProcedureEvidenceSequence = same_study
        if other_study:
            sr.PertinentOtherEvidenceSequence = other_study
        meta = FileMetaDataset()
        for element in document.file_meta:
            if element.keyword != "MediaStorageSOPInstanceUID":  # new elements: writing sets the group length
                meta.add(DataElement(element.tag, element.VR, element.value))
        meta.MediaStorageSOPInstanceUID = uids.sop
        sr.file_meta = meta
        sr.preamble = document.preamble  # as highdicom sets it: what makes pydicom write a DICOM file (DICM + meta)
        return _mark(sr)


_PER_INSTANCE = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceCreationDate",
                 "InstanceCreationTime", "ContentDate", "ContentTime", "ContributingEquipmentSequence",
                 "CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")


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


IMAGING_MEASUREMENTS = ("126010", "DCM")  # TID 1500's container of the measurement groups


def _concept(item: Any) -> tuple[str, str] | None:
    """(CodeValue, CodingSchemeDesignator) of a content item's concept name."""
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    return str(names[0].get("CodeValue", "")), str(names[0].get("CodingSchemeDesignator", ""))


def _measurements(root: Any) -> Any:
    """The root's Imaging Measurements CONTAINER (None when it has none)."""
    return next((item for item in root.get("ContentSequence", []) if _concept(item) == IMAGING_MEASUREMENTS), None)


def _with_content(item: Any, content: Any) -> Any:
    """A new dataset with ``item``'s elements (shared, never changed) and ``content`` as its ContentSequence."""
    from pydicom.dataset import Dataset

    new = Dataset()
    for element in item:
        if element.keyword != "ContentSequence":
            new.add(element)
    new.ContentSequence = list(content)
    return new


def _replaced(group: Any, fresh: list[Any]) -> Any:
    """``group`` with the ``fresh`` items in the places of its items of the same concepts (in order), or None
    when they do not line up one to one."""
    fresh_by_concept: dict[Any, list[Any]] = {}
    for item in fresh:
        fresh_by_concept.setdefault(_concept(item), []).append(item)
    concepts = [_concept(item) for item in group.ContentSequence]
    if any(concepts.count(concept) != len(items) for concept, items in fresh_by_concept.items()):
        return None
    return _with_content(group, [fresh_by_concept[concept].pop(0) if concept in fresh_by_concept else item
                                 for concept, item in zip(concepts, group.ContentSequence)])


def _mark(sr: Any) -> Any:
    """Tell pydicom's writer that the datasets of ``sr`` built here need no encoding correction, so that it
    writes them as they are (``Dataset.set_original_encoding``, the API pydicom documents "to enable optimized
    writing"); returns ``sr``.

    A dataset built from scratch has no original encoding, so ``dcmwrite`` runs ``correct_ambiguous_vr`` on
    it, and again on every sequence item at every level of the content tree (each ``write_dataset`` call walks
    its whole subtree): half the SR's encoding time. The only correction it can make is to elements whose VR
    is ambiguous (``US or SS``, ``OB or OW``...): when the whole tree has none, every dataset created here (no
    original encoding: not read from a file, so no raw elements) is marked as explicit VR little endian, the
    SR's transfer syntax, in the character set it is written with. The marks are the same whichever SR a
    shared dataset is in (a dataset's character set is its own), so shared items may be marked again; a
    dataset read from the source (copied patient/study sequences) is left as it is, and pydicom checks it as
    before. When the tree holds an ambiguous VR, nothing is marked and pydicom corrects it as always."""
    from pydicom.charset import convert_encodings, default_encoding
    from pydicom.dataelem import DataElement
    from pydicom.valuerep import AMBIGUOUS_VR

    fresh: list[Any] = []
    todo = [sr]
    while todo:
        ds = todo.pop()
        if ds.original_encoding == (None, None):
            fresh.append(ds)
        for element in ds.elements():
            if element.VR in AMBIGUOUS_VR:
                return sr
            if element.VR == "SQ" and isinstance(element, DataElement):
                todo.extend(element.value)
    for ds in fresh:
        charset = ds.get("SpecificCharacterSet")
        ds.set_original_encoding(False, True,
                                 convert_encodings(charset) if charset else getattr(ds, "_parent_encoding",
                                                                                     default_encoding))
    return sr


def _derived(base: str, part: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[base, "|", part])


__all__ = ["build_sr", "ReportBuilder", "result_uids", "model_identity", "ResultUIDs", "CLASS_SCHEME", "SERIES_NUMBER"]
