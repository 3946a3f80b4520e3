"""The review gallery: a FastAPI app (pages, JSON API, image files) guarded by Airflow's auth."""
