"""Serving a model over HTTP: OpenAI's API, batched generation, a page to try it in a browser.

Read in this order: engine.py (the queue, the worker thread and its batched decoding step),
classify.py (a classifier's forward passes, on a thread of their own, instead of the engine),
app.py (the FastAPI routes over the engine: requests in, JSON or server-sent events out),
server.py (uvicorn, the model loading in the background, a graceful stop), static/ (the page).

FastAPI and uvicorn are imported only here, when a model is served: importing gpt2_llm never
imports them.
"""
