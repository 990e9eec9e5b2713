"""HTTP: the FastAPI app factory, error mapping and routers (OpenAI-compatible under /v1,
the store's own under /api). Routers parse HTTP; they call catalog / jobs / inference."""
