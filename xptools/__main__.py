from xptools.cli import main

main()
