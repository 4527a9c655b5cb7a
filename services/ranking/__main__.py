from services.ranking.server import main

main()
