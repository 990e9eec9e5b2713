from gptstore.cli.app import main

main()
