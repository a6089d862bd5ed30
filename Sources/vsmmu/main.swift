import VsmmuCommands

VsmmuCommand.main()
