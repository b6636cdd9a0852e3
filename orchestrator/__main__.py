"""``python -m mmlo.orchestrator`` is the ``mmlo`` command."""

from mmlo.orchestrator.cli import main

main()
