from simplematch.cli import main

main()
