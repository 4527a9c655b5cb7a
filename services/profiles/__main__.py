from services.profiles.server import main

main()
