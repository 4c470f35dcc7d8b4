"""The bundle format: one HDF5 file per phase, written atomically, read without unpickling or torch."""

from stagekit.bundle.format import (
    FORMAT_VERSION,
    Bundle,
    atomic_folder,
    atomic_output,
    ensure_writable_folder,
    file_sha256,
    read_bundle,
    verify_bundle,
    write_bundle,
)

__all__ = ["FORMAT_VERSION", "Bundle", "atomic_folder", "atomic_output", "ensure_writable_folder", "file_sha256",
           "read_bundle", "verify_bundle", "write_bundle"]
