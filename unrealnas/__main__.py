from unrealnas.cli.main import main

raise SystemExit(main())
