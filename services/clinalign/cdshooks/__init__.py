"""The CDS Hooks 2.0 gateway: the EHR-facing front door. Discovery, hooks that draft with
``GenerationService`` as the EHR user, cards carrying AI transparency, and feedback whose
overrides become monitor flags. It holds no clinical data; see ``app`` for the surface."""
