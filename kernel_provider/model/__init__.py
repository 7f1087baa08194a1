"""The pure model of CondaTainer's files: names → overlays → env files, binds → a plan → apptainer argv.

No side effects: nothing here writes a file or starts a process; facts about the host come in
through :class:`~kernel_provider.model.plan.HostFacts`.
"""
