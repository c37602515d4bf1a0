"""The clinician console: the web application clinicians use to label answers, flag
production outputs and review flags, and clinical leads use to follow labelling and safety.

It holds no data of its own: every page calls the preference and monitor services (and the
trainer's registry, read-only) over gRPC as the signed-in person (``backend``). See
``app`` for the stack and its security headers, ``signin`` and ``sessions`` for how people
sign in, and the ``*_pages`` modules for the pages.
"""
