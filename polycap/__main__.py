from polycap.cli import main

main()
