"""Serving: torch and vLLM engines, FAISS index, FastAPI app."""
