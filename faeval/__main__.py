from faeval.cli import main

main()
