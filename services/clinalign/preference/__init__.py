"""Preference store: clinician feedback, de-identified, audited and snapshotted."""
