"""Plumbing shared by every ClinAlign service: settings, server start-up, auth, errors,
telemetry and logging. Lives here once; services import it, never copy it."""
