"""``jupyter condatainer``: kernelspecs, instances and env operations from a terminal, on the server's code."""
