from piml.entry import main

main()
