from piml.cli import main

main()
