"""``python -m trt_provision`` → the CLI."""

from trt_provision.cli.main import main

raise SystemExit(main())
