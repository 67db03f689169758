from diffrecon.cli import main

raise SystemExit(main())
