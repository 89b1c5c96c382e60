from streamrec.cli import main

main()
