"""``polycap serve``: captions (and retrieved captions) over HTTP, with request batching.

- :mod:`polycap.serve.settings`: limits and batching knobs;
- :mod:`polycap.serve.batcher`: gathers concurrent requests into batches;
- :mod:`polycap.serve.models`: the loaded models and banks, and how a batch is decoded;
- :mod:`polycap.serve.uploads`: reading a request's image within the limits;
- :mod:`polycap.serve.schemas`: the request options (one schema for JSON and form fields);
- :mod:`polycap.serve.app`: the FastAPI application, its routes, errors and the page.
"""
