"""Results as DICOM objects: the SEG, the heat-map SEG and the TID 1500 SR (highdicom), and the
DICOMweb store they go to (STOW-RS). The builders import no adapter; ``dicomweb_store`` is one."""
