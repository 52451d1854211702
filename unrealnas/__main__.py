from unrealnas.cli import main

raise SystemExit(main())
