from lawchatd.cli import main

raise SystemExit(main())
