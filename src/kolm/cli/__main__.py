from kolm.cli import main

main()
