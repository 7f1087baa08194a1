"""Kernels: the provisioners (local and SLURM) that run ipykernel in a stack, and the kernelspecs naming them."""
