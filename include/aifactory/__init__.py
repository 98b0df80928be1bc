"""AI Factory Pipelines: the Airflow-free core.

Everything here is plain, typed Python that imports no Airflow, so it is unit-tested in
milliseconds and reused by the operators in ``operators/`` (the Airflow adapters).
"""
