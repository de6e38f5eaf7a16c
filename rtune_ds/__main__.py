from rtune_ds.cli import main

raise SystemExit(main())
