from torchshrink.cli import main

raise SystemExit(main())
