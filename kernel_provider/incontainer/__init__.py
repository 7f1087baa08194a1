"""Bound into every container, stdlib only: launch → conda activation → ipykernel with the %condatainer magic."""
