"""The training runtime every loop runs on (classification, detection, segmentation, the search's supernet):
configuration (``config``), process groups and collectives (``distributed``), the checkpoint schema
(``checkpoint``), the loop (``loop``), schedules and the optimiser (``schedule``, ``optim``), logs and curves
(``logging``, ``plot``). See docs/training.md."""
