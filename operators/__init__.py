"""Darkroom's Airflow adapters: operators, sensors, triggers and hooks.

Installed as the ``darkroom_operators`` package (from this folder) so that workers and the
triggerer can import them. Each is thin: it builds a RunContext and calls a darkroom stage.
"""
