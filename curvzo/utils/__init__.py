"""Small helpers shared by the entrypoint: instantiation, run metadata."""
