"""Darkroom: campaign specs in, generated, checked, approved and traceable images out.

This package is the domain core. It knows nothing of Airflow: every stage is a plain
function that the Airflow adapters in ``darkroom_operators`` (and the tests) call.
"""

__version__ = "0.1.0"
