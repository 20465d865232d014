from sdgen.cli.main import main

raise SystemExit(main())
