"""Independent transcriptions of the published updates, trainers and models the tests compare
the package against (never imported by the package)."""
