from voiceslot.cli.main import main

main()
