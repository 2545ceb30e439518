from lit_linearizer.cli import main

main()
