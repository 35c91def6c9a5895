"""Serve a trained model over HTTP: FastAPI + uvicorn, dynamic batching, limits, a page (above run, below cli)."""
