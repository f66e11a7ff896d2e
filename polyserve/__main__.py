from polyserve.cli import main

main()
