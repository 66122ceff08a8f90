from opskit.cli import main

raise SystemExit(main())
