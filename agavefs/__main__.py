from agavefs.cli import main

raise SystemExit(main())
