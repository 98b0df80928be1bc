"""Airflow adapters (hooks, operators, triggers) over :mod:`aifactory`."""
