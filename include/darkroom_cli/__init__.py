"""The ``darkroom`` command line, outside the Airflow-free core (it may drive Airflow through
darkroom_operators; the core may not)."""
