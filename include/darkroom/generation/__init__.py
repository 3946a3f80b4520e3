"""Image generation: request and result types, model references and their resolution, model
profiles in the MLflow registry, the backends (local diffusers, the model server, Stability
AI), routing rules, and what differs between model families.

Only :mod:`darkroom.generation.local` (and the model server built on it) imports torch and
diffusers; everything else here is light enough for the DAG factory and the CLI.
"""
